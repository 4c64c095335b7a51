"""Average checkpoints: python average.py run_dir=RUN last=5 output=avg.ckpt."""

from nmt.cli import average_main

if __name__ == "__main__":
    average_main()
