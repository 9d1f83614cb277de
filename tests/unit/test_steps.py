"""The start-up step table (daemons/init/steps.py) against the seed, and role selection."""

import inspect
import re
from pathlib import Path

import pytest

from common.paths import MANAGED_PROGRAMS
from daemons.init import actions, platform_steps
from daemons.init.runner import LOCAL_ACTION_MODULES, local_action
from daemons.init.steps import (BOTH, MASTER, SLAVE, STEPS, Command, Local, StartProgram,
                                programs_in_start_order, steps_for)

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seeds" / "xapi-startup.txt"
MARKER = re.compile(r"^\((both|master|slave)\)(.*)$")


def seed_steps():
    """(role, name) of every step line of the seed, in order. A line may carry a second,
    non-role parenthesis after the marker ("(both) (Placeholder ...)"): it is part of the name."""
    if not SEED.is_file():
        pytest.fail(f"the seed is not at {SEED} (a clone needs shared/ beside it)")
    steps = []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        match = MARKER.match(line.strip())
        if match:
            steps.append((match.group(1), match.group(2).strip()))
    return steps


def test_seed_parses_to_a_plausible_table():
    steps = seed_steps()
    assert len(steps) > 40
    assert steps[0] == ("both", "Parse command-line arguments")
    assert ("both", '(Placeholder for touching a "ready" file)') in steps
    assert all(name and not MARKER.match(name) for _, name in steps)


def test_step_table_is_the_seed_in_order():
    seed = seed_steps()
    table = [(step.role, step.name) for step in STEPS]
    for index, (expected, actual) in enumerate(zip(seed, table)):
        assert actual == expected, f"step {index}: table has {actual}, seed has {expected}"
    assert len(table) == len(seed)


def test_step_names_are_unique_per_role():
    keys = [(step.role, step.name) for step in STEPS]
    assert len(keys) == len(set(keys))


def test_every_role_is_known():
    assert {step.role for step in STEPS} == {BOTH, MASTER, SLAVE}


# -- role selection --------------------------------------------------------------------------

def test_master_runs_both_and_master_steps_in_order():
    selected = steps_for("master")
    assert selected == [s for s in STEPS if s.role in (BOTH, MASTER)]
    assert not [s for s in selected if s.role == SLAVE]
    assert any(s.role == MASTER for s in selected)


def test_slave_runs_both_and_slave_steps_in_order():
    selected = steps_for("slave")
    assert selected == [s for s in STEPS if s.role in (BOTH, SLAVE)]
    assert not [s for s in selected if s.role == MASTER]
    assert any(s.role == SLAVE for s in selected)


def test_broken_runs_role_neutral_steps_up_to_the_one_that_ends_its_run():
    enders = [i for i, s in enumerate(STEPS) if s.ends_broken_run]
    assert len(enders) == 1, "exactly one step ends a broken run"
    end = enders[0]
    selected = steps_for("broken")
    assert selected == [s for s in STEPS[:end + 1] if s.role == BOTH]
    assert selected[-1] is STEPS[end]
    assert all(s.role == BOTH for s in selected)
    assert len(selected) < len(steps_for("master"))


def test_every_step_is_selected_for_some_role():
    covered = {id(s) for role in ("master", "slave") for s in steps_for(role)}
    assert covered == {id(s) for s in STEPS}


@pytest.mark.parametrize("role, before, after", [
    ("master", "xapi-ha", "xapi-db"),
    ("slave", "xapi-periodic", "xapi-db"),
])
def test_programs_in_start_order(role, before, after):
    order = programs_in_start_order(role)
    assert sorted(order) == sorted(MANAGED_PROGRAMS)
    assert len(order) == len(set(order)) == 7
    assert order.index(after) == order.index(before) + 1
    assert order[0] == "xapi-api"


def test_master_starts_the_database_before_the_periodic_scheduler_and_slave_after():
    master, slave = programs_in_start_order("master"), programs_in_start_order("slave")
    assert master.index("xapi-db") < master.index("xapi-periodic")
    assert slave.index("xapi-db") > slave.index("xapi-periodic")


def test_broken_starts_no_database():
    assert "xapi-db" not in programs_in_start_order("broken")


# -- actions ---------------------------------------------------------------------------------

def all_actions():
    return [(step, action) for step in STEPS for action in step.actions]


def test_every_action_is_a_known_kind():
    for step, action in all_actions():
        assert isinstance(action, (Local, StartProgram, Command)), (step.name, action)


def test_every_local_action_names_a_function_of_a_local_action_module():
    locals_ = [(s, a) for s, a in all_actions() if isinstance(a, Local)]
    assert locals_
    for step, action in locals_:
        fn = local_action(action.fn)   # LookupError: missing, imported, or defined twice
        assert callable(fn), f"{step.name}: {action.fn} is not callable"
        assert inspect.getmodule(fn) in LOCAL_ACTION_MODULES, f"{action.fn} is not a local action"


def test_the_runner_resolves_local_actions_only_where_they_are_defined():
    assert local_action("parse_arguments") is actions.parse_arguments
    assert local_action("check_control_domain") is platform_steps.check_control_domain
    for name in ("atomic_write", "no_such_action", "XapiError"):   # imported, or nowhere
        with pytest.raises(LookupError):
            local_action(name)


def test_every_command_predicate_names_a_function_of_actions_py():
    for step, action in all_actions():
        if isinstance(action, Command) and action.only_if is not None:
            assert callable(getattr(actions, action.only_if, None)), (step.name, action.only_if)


def test_every_step_without_actions_is_pending():
    for step in STEPS:
        if not step.actions:
            assert step.pending, f"{step.name!r} has no action and does not say it is pending"


def test_every_program_named_is_managed():
    for step, action in all_actions():
        if isinstance(action, (StartProgram, Command)):
            assert action.program in MANAGED_PROGRAMS, (step.name, action.program)


def test_commands_go_to_a_program_started_at_or_before_that_step():
    for role in ("master", "slave", "broken"):
        started = set()
        for step in steps_for(role):
            for action in step.actions:
                if isinstance(action, StartProgram):
                    started.add(action.program)
                elif isinstance(action, Command):
                    assert action.program in started, (role, step.name, action.program)


CONTEXT_ASSIGNMENT = re.compile(r"\bctx\.(?!notes\b)([a-z_]+)\s*(?:,[^=\n]*)?=(?!=)")


def test_steps_that_build_the_context_run_again_on_resume():
    """A resumed run skips the steps already done; a step whose action sets xapi-init's own
    state (ctx.inventory, ctx.local_db, ...) must run again, or the steps after it find that
    state empty (a resumed run once failed "Check control domain" with KeyError)."""
    builders = []
    for step in STEPS:
        for action in step.actions:
            if isinstance(action, Local):
                source = inspect.getsource(local_action(action.fn))
                if CONTEXT_ASSIGNMENT.search(source):
                    builders.append(step)
    assert builders, "no step assigns the context: the pattern is wrong"
    assert [s.name for s in builders if not s.rerun_on_resume] == []
