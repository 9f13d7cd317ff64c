import os

# Parity tests compare float32 math: keep XLA from using faster-but-looser CPU paths.
os.environ.setdefault("XLA_FLAGS", "")

from hypothesis import settings

# Deterministic examples: the same run in CI as on a developer's machine.
settings.register_profile("rnnjax", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("rnnjax")
