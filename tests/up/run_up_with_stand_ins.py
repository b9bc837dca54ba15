"""``beanraft up`` with the stand-in children: ``python run_up_with_stand_ins.py UP-FLAGS...``."""

import argparse
import sys
from pathlib import Path

from beanraft import up

parser = argparse.ArgumentParser()
up.add_arguments(parser)
stand_in = Path(__file__).with_name("stand_in_beanraft.py")
sys.exit(up.Up(parser.parse_args(), [sys.executable, str(stand_in)]).run())
