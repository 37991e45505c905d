"""The embedded demo bank: a tiny Mistral, task-family datasets and one trained LoRA per task.

`build_demo_bank(out, size, seed)` (in `build`) writes it in the Lots-of-LoRAs layout. A product
of its own beside the stages: it writes datasets in the bank's format (`lorabatch.bank.datasets`)
and trains with `lorabatch.training`; the workflows build it before the bank stage reads it
(`lorabatch.workflows.demo_bank`, when a run config has `bank.demo`) and `lorabatch bank extend`
reuses its recipe.
"""
