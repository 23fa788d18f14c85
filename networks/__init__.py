"""Every torch network of the project, pure torch (plus diffusers, einops, safetensors where needed).

A network file builds an `nn.Module` from a config and loads weights through `networks.checkpoints` (one
checkpoint reader, one strict loader). Nothing here imports Ray, PyAV, pydantic or the floors above, so a
network also runs on a bare GPU machine.
"""
