"""`python -m prunebench ...`, as `prunebench ...` (and `torchrun -m prunebench ...`)."""

from prunebench.cli import main

if __name__ == "__main__":
    main()
