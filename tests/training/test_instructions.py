"""The draft's training instructions keep the held-out set unseen: no train or extra instruction uses a
held-out phrasing or a held-out topic."""

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "training"))

import smollm2_instructions as inst  # noqa: E402


def instance_of(template: str, text: str) -> bool:
    head, tail = template.split("{t}")
    return re.fullmatch(re.escape(head) + "(.+)" + re.escape(tail), text, re.DOTALL) is not None


def held_out_parts():
    """Held-out phrasings by family (a phrasing belongs to its family), and every held-out topic."""
    templates, topics = {}, []
    for family, (family_templates, family_topics) in inst.FAMILIES.items():
        templates[family] = inst.held_out_part(family_templates, 0.25)
        topics += inst.held_out_part(family_topics, 0.15)
    return templates, topics


def test_train_and_extra_instructions_never_use_a_held_out_phrasing_or_topic():
    train, heldout = inst.instructions()
    extra = inst.extra_instructions(["def f(x):\n    return x"], ["A paragraph the project may use."])
    templates, topics = held_out_parts()
    assert heldout and len(extra) > len(train)
    for item in train + extra:
        assert not any(instance_of(t, item["user"]) for t in templates[item["family"]]), item["user"]
        assert not any(topic.lower() in item["user"].lower() for topic in topics), item["user"]
    # The check can fail: every held-out instruction is an instance of a held-out phrasing.
    assert all(any(instance_of(t, item["user"]) for t in templates[item["family"]]) for item in heldout)


def test_extra_topics_are_new():
    for family, topics in inst.EXTRA_TOPICS.items():
        assert len(set(topics)) == len(topics), family
        assert not set(topics) & set(inst.FAMILIES[family][1]), family
