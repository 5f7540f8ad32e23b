"""Entry point the DeepSpeed launcher (or torchrun) starts on every rank:
`deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config CONFIG [--resume] [key=value ...]`.
The work is in qr_ds/train/launch.py (also runnable as `deepspeed --module qr_ds.train.launch`)."""
import os
import sys

from qr_ds.train.launch import main

if __name__ == "__main__":
    # A rank prints its one-line failure; the traceback only when asked (QR_DS_TRACEBACK=1), as qr-ds does.
    os.environ.setdefault("QR_DS_TRACEBACK", "0")
    sys.exit(main())
