"""The embedded demo bank: a tiny Mistral, task-family datasets and one trained LoRA per task.

`build_demo_bank(out, size, seed)` (in `build`) writes it in the Lots-of-LoRAs layout.
"""
