"""What each machine can run: device discovery (CPU class, AVX-512, OpenVINO devices,
CUDA/XPU; nothing invented), the capability table of ``configs/hardware.yaml``, workload
placement, and running a workload on one device. Pure: the Ray actors in :mod:`actors`
drive it.
"""
