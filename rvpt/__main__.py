"""`python -m rvpt`: the `rvpt` command. The library never imports the pipeline; this entry point,
which nothing imports, is the one place that reaches it."""
if __name__ == "__main__":
    from pipeline.cli import main

    main()
