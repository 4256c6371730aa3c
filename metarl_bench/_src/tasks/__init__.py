"""Layer 1: meta-RL tasks (bandits, MDPs, navigation, MuJoCo), their policies and environments."""

from metarl_bench._src.tasks.bandit import BanditTask, make_bandit
from metarl_bench._src.tasks.base import Task
from metarl_bench._src.tasks.tabular import (DiscountedTabularTask, TabularTask,
                                             make_discounted_tabular, make_tabular)

__all__ = ["BanditTask", "DiscountedTabularTask", "TabularTask", "Task", "make_bandit",
           "make_discounted_tabular", "make_tabular"]
