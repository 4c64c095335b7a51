"""The command line: every program's Hydra entry point (``main``) and the typed schema of
the configs (``config``). The top layer: it may import every other package.
"""

from nmt.cli.commands import (
    average_main,
    caption_main,
    curves_main,
    evaluate_main,
    export_main,
    gettext_main,
    main,
    prepare_main,
    serve_main,
    shortlist_main,
    train_main,
    translate_main,
)

__all__ = ["average_main", "caption_main", "curves_main", "evaluate_main", "export_main",
           "gettext_main", "main", "prepare_main", "serve_main", "shortlist_main", "train_main",
           "translate_main"]
