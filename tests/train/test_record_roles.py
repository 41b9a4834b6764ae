"""Each train_tgr.py flag declares one role in the run's record, and the roles decide what a resume compares,
what starts a new args.yaml and what the model card shows."""
import pytest
import yaml

from timm_tgr.export import _data_details
from timm_tgr.task.options import NEUTRAL, RECIPE, ROLES, RUN, RUN_FOLDER
from timm_tgr.train import build_parser, parse_args
from timm_tgr.train.record import record_roles
from timm_tgr.train.run_folder import write_args_yaml
from timm_tgr.train.spec import resolve_run


def _flags():
    return [a for a in build_parser()._actions if a.dest != 'help']


def test_every_flag_declares_one_role():
    assert all(a.role in ROLES for a in _flags())
    assert record_roles()['model_arch'] == record_roles()['model']  # a resolved value has its flag's role
    assert record_roles()['rank'] == NEUTRAL


def test_every_key_of_the_record_has_a_role():
    record = resolve_run(parse_args(['--model', 'vmoe_deit_tiny'])).record()
    assert set(record) <= set(record_roles())


def test_paths_of_this_machine_stay_out_of_the_card():
    """A flag that names a file or folder (its metavar says so) is not recipe: the card is read elsewhere."""
    paths = [a.dest for a in _flags() if a.metavar in ('PATH', 'DIR', 'FILE')]
    assert {'data_dir', 'teacher_checkpoint', 'teacher_routers_from', 'resume', 'output'} <= set(paths)
    assert not [d for d in paths if record_roles()[d] in (RECIPE, RUN)]


def test_the_folder_flags_are_the_run_folders():
    assert {a.dest for a in _flags() if a.role == RUN_FOLDER} == {'output', 'experiment', 'resume'}


@pytest.mark.parametrize('change, kept', [
    (['--workers', '3', '--threads', '2', '--data-dir', 'elsewhere', '--no-progress'], False),
    (['--teacher-checkpoint', __file__, '--trust-checkpoint'], False),
    (['--lr', '1e-3'], True),
    (['--distill-weight', '2'], True),
    (['--probe-samples', '10'], True),
])
def test_a_resume_keeps_the_earlier_args_yaml_when_it_changes_what_the_run_computes(tmp_path, change, kept):
    write_args_yaml(resolve_run(parse_args([])).record(), str(tmp_path), 0)
    write_args_yaml(resolve_run(parse_args(change)).record(), str(tmp_path), 3)
    assert (tmp_path / 'args-to-epoch2.yaml').exists() == kept
    assert yaml.safe_load((tmp_path / 'args.yaml').read_text())[change[0][2:].replace('-', '_')] is not None


def test_the_card_recipe_holds_what_the_run_trained_with():
    record = resolve_run(parse_args(['--teacher-checkpoint', __file__, '--distill-weight', '2'])).record()
    recipe = _data_details(record)['Training recipe']
    assert {'lr', 'epochs', 'distill_weight', 'tgr_mode', 'layer_map', 'opt', 'teacher_resolved'} <= set(recipe)
    assert not {'teacher_checkpoint', 'data_dir', 'output', 'workers', 'model', 'model_kwargs'} & set(recipe)
