"""The embedded demo bank: a tiny Mistral, task-family datasets and one trained LoRA per task.

`build_demo_bank(out, size, seed)` (in `build`) writes it in the Lots-of-LoRAs layout. The default
bank also ships with the package (`shipped`): `provide_demo_bank` copies it where a config asks for
its recipe (`recipe`), and builds any other. A product of its own beside the stages: it writes
datasets in the bank's format (`lorabatch.bank.datasets`) and trains with `lorabatch.training`;
the bank stage (`lorabatch.bank.manifest`, source `demo`) and `lorabatch bank extend` call it.
"""
