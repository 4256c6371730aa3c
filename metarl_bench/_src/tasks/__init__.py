"""Meta-RL tasks, one module per kind: ``base`` (the interface every task satisfies and the
sampling helpers), ``tabular`` (random MDPs), ``bandit`` (K-armed bandits)."""

from metarl_bench._src.tasks.bandit import BanditTask, make_bandit
from metarl_bench._src.tasks.base import Task
from metarl_bench._src.tasks.tabular import (DiscountedTabularTask, TabularTask,
                                             make_discounted_tabular, make_tabular)

__all__ = ["BanditTask", "DiscountedTabularTask", "TabularTask", "Task", "make_bandit",
           "make_discounted_tabular", "make_tabular"]
