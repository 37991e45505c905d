"""The bank: a base model plus tasks, each a PEFT adapter and the dataset it was trained on."""
