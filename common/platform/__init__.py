"""Host facts (psutil, /proc) and the simulated hypervisor."""
