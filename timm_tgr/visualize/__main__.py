from .cli import main

if __name__ == '__main__':
    from ..utils.cli import run_cli
    run_cli(main, 'python -m timm_tgr.visualize')
