import os

import torch
from hypothesis import HealthCheck, settings

# Two pytest workers share two cores: one torch thread each.
torch.set_num_threads(1)

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
