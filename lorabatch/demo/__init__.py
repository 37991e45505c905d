"""The embedded demo bank: a tiny Mistral, task-family datasets and one trained LoRA per task.

`build_demo_bank(out, size, seed)` (in `build`) writes it in the Lots-of-LoRAs layout. The default
bank also ships with the package (`shipped`): `provide_demo_bank` copies it where a config asks for
its recipe (`recipe`), and builds any other. A product of its own beside the stages: it writes
datasets in the bank's format (`lorabatch.bank.datasets`) and trains with `lorabatch.training`;
the workflows provide it before the bank stage reads it (`lorabatch.workflows.demo_bank`, when a
run config has `bank.demo`) and `lorabatch bank extend` reuses its recipe.
"""
