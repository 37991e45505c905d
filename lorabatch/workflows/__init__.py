"""Workflows: the commands a user runs, on top of the stages they call (practice 11).

    predict.py          `lorabatch predict`: a dataset → distances to the bank → coefficients → an adapter
    fewshot_predict.py  `lorabatch predict --fewshot select|refine`: the few-shot settings for a dataset
    train.py            `lorabatch train`: a dataset → a LoRA trained on Ray Train
    extend.py           `lorabatch bank extend`: train the adapters a local bank lacks, bring the run up to date
    demo_bank.py        the demo bank built before the bank stage reads it (`bank.demo`)
    distances.py        features → distances over the bank, with the one rule for starting Ray
    userdata.py         a user's dataset (reading, validation, hashing) and where an adapter may be written

No stage imports a workflow; the sweep (`lorabatch.sweep`) and the command line sit above them.
"""
