"""python -m jaxface.clean: see `jaxface.clean`."""
import sys

from jaxface.clean.cleaner import main

if __name__ == '__main__':
  sys.exit(main())
