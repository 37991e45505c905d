"""Adapter synthesis: coefficient models (`coefficients`, `neural`), mixing (`mixing`), the PEFT
adapter writer (`writer`), the safetensors layout of a bank (`tensors`), batch synthesis (`batch`)
and the stage on a run directory (`stage`). numpy is needed throughout; torch (neural model) and
ray (batch executor) are imported by the functions that need them.
"""
