"""Entry point the DeepSpeed launcher (or torchrun) starts on every rank:
`deepspeed [--hostfile H] [--num_gpus N] launch/train.py --config CONFIG [--resume] [key=value ...]`.
The work is in qr_ds/train/launch.py (also runnable as `deepspeed --module qr_ds.train.launch`)."""
import sys

from qr_ds.train.launch import main

if __name__ == "__main__":  # a rank prints a one-line failure; a traceback only with QR_DS_TRACEBACK=1
    sys.exit(main())
