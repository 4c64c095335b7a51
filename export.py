"""Export a checkpoint: python export.py checkpoint=model.ckpt format=onnx|int8 output=DIR."""

from nmt.cli import export_main

if __name__ == "__main__":
    export_main()
