"""Serve a model over HTTP: python serve.py checkpoint=model.ckpt [port=8000]."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import serve_main

    serve_main()
