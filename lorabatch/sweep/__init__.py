"""The sweep: every stage of the leave-one-out experiment, in order, each cached in the run dir."""
