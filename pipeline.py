"""Command-line entry of wo-stream (`python pipeline.py ...`); the code lives in pipeline/cli.py."""

# `import pipeline` resolves to the pipeline/ package next to this file: packages win over modules.
from pipeline.cli import main

if __name__ == "__main__":
    main()
