"""UCB against a hand-computed example (docs/contracts.md §5)."""

from types import SimpleNamespace as NS

from agent.ucb import render, ucb_scores


def _nodes():
    # block tree: 1 -> {3 -> {4}, 5}; 2 alone
    return [NS(id=1, parent=None, score=0.5, mutation="baseline"),
            NS(id=2, parent=None, score=0.6, mutation="lr: 1E-3 -> 5E-4"),
            NS(id=3, parent=1, score=0.7, mutation="lr: 1E-3 -> 2E-3"),
            NS(id=4, parent=3, score=0.8, mutation="lr: 2E-3 -> 4E-3"),
            NS(id=5, parent=1, score=0.4, mutation="coeff_reg: 0 -> 1")]


def test_ucb_hand_computed():
    # N = 5, c = 1, sqrt(5) = 2.2360680; V = 1 + descendants: V1 = 4, V2 = 1, V3 = 2, V4 = 1, V5 = 1
    text = render(ucb_scores(_nodes(), c=1.0))
    assert text == (
        "Node 4: UCB=1.918, parent=3, visits=1, score=0.8000, Mutation=lr: 2E-3 -> 4E-3\n"   # 0.8 + 2.236/2
        "Node 2: UCB=1.718, parent=root, visits=1, score=0.6000, Mutation=lr: 1E-3 -> 5E-4\n"  # 0.6 + 2.236/2
        "Node 5: UCB=1.518, parent=1, visits=1, score=0.4000, Mutation=coeff_reg: 0 -> 1\n"  # 0.4 + 2.236/2
        "Node 3: UCB=1.445, parent=1, visits=2, score=0.7000, Mutation=lr: 1E-3 -> 2E-3\n"   # 0.7 + 2.236/3
        "Node 1: UCB=0.947, parent=root, visits=4, score=0.5000, Mutation=baseline\n")       # 0.5 + 2.236/5


def test_running_children_count_as_visits_of_parent_and_ancestors():
    e = {x.id: x for x in ucb_scores(_nodes(), c=1.0, pending_parents=[4])}
    assert (e[4].visits, e[3].visits, e[1].visits, e[2].visits) == (2, 3, 5, 1)
    assert round(e[4].ucb, 6) == round(0.8 + 5 ** 0.5 / 3, 6)
    assert round(e[1].ucb, 6) == round(0.5 + 5 ** 0.5 / 6, 6)


def test_parent_outside_block_and_empty():
    assert render(ucb_scores([], c=1.0)) == ""
    # a parent from an earlier block is not in the block: it gets no visits, the line still names it
    only = ucb_scores([NS(id=9, parent=3, score=0.25, mutation="x: 1 -> 2")], c=2.0)
    assert only[0].line() == "Node 9: UCB=1.250, parent=3, visits=1, score=0.2500, Mutation=x: 1 -> 2"
