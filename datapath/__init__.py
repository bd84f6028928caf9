"""The eBPF datapath: C sources, the built object, the libbpf binding and the map layouts."""

from pathlib import Path

OBJECT_PATH = Path(__file__).with_name("lb_kern.o")
PROGRAM_NAME = "lb_ingress"
SWEEP_PROGRAM_NAME = "lb_sweep"
