"""Export a checkpoint: python export.py checkpoint=model.ckpt format=onnx|int8 output=DIR."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import export_main

    export_main()
