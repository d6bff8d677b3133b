"""Dataset construction: (input, target) pairs per task and the FP/RP/test manifests."""
