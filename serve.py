"""Serve a model over HTTP: python serve.py checkpoint=model.ckpt [port=8000]."""

from nmt.cli import serve_main

if __name__ == "__main__":
    serve_main()
