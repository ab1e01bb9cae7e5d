"""Hugging Face Spaces entry point (and `make app`): a Gradio chat over an exported GGUF.

    python app.py --out outputs/smol                                    # what `make app` does: the best run's exported GGUF
    LAB2_GGUF=outputs/smol/<exp>/gguf/<exp>.q4_k_m.gguf python app.py   # a local file
    LAB2_REPO=you/model-gguf LAB2_FILE=model.q4_k_m.gguf python app.py  # from the Hub
Optional: LAB2_BASE_GGUF (a base-model GGUF for the before/after tab), LAB2_N_CTX, PORT.
"""

import argparse
import os

from lab2.app import from_environment

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", help="local GGUF file (else LAB2_GGUF)")
    parser.add_argument("--out", help="a sweep's folder: serve the GGUF its best run's export record names (`make app`)")
    parser.add_argument("--exp", help="with --out: this experiment's export instead of the best one's")
    parser.add_argument("--base-gguf", help="base-model GGUF for the before/after tab (else LAB2_BASE_GGUF)")
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    args = parser.parse_args()
    if args.out and not args.gguf:
        from lab2.config import ConfigError
        from lab2.export import served_gguf

        try:
            args.gguf = str(served_gguf(args.out, args.exp))
        except ConfigError as exc:  # one line: usually `make export` has not run yet
            raise SystemExit(f"error: {exc}") from None
    if args.gguf:
        os.environ["LAB2_GGUF"] = args.gguf
    if args.base_gguf:
        os.environ["LAB2_BASE_GGUF"] = args.base_gguf
    try:
        app = from_environment()
    except FileNotFoundError as exc:  # one line, not a traceback: usually `make export` has not run yet
        raise SystemExit(f"error: {exc}") from None
    app.launch(server_name=args.host, server_port=args.port)
