"""Prompt assembly: profile and context in the system message, history trimmed newest-first."""

from __future__ import annotations

from inference.chat.prompting import ContextPassage, assemble, profile_text


def size(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) + 2 for m in messages)


def turn(i: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"question {i} " + "pad " * 10},
        {"role": "assistant", "content": f"answer {i} " + "pad " * 10},
    ]


def test_history_comes_before_the_new_turn_and_the_system_prompt_first() -> None:
    history = turn(1) + turn(2)
    new = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "And now?"}]
    out = assemble(new_messages=new, history=history, profile="", fits=lambda m: True)
    assert [m["role"] for m in out.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert out.messages[0]["content"] == "Be brief."
    assert out.messages[-1]["content"] == "And now?" and out.history_used == 4


def test_trimming_keeps_the_newest_turns_and_the_system_prompt() -> None:
    history = [m for i in range(10) for m in turn(i)]
    new = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "latest"}]
    budget = 80
    out = assemble(new_messages=new, history=history, profile="", fits=lambda m: size(m) <= budget)
    assert size(out.messages) <= budget
    assert out.messages[0] == {"role": "system", "content": "Be brief."}
    kept = out.messages[1:-1]
    assert kept and kept[0]["role"] == "user"  # resumes on a user turn
    assert kept[-1]["content"].startswith("answer 9")  # the newest history is what stays
    assert "question 0" not in " ".join(m["content"] for m in kept)
    assert out.history_dropped == len(history) - len(kept)
    # One more message would not have fitted.
    assert size([out.messages[0], *history[len(history) - len(kept) - 2 :], new[1]]) > budget


def test_passages_are_dropped_least_relevant_first_after_history() -> None:
    passages = [ContextPassage(document=f"doc{i}", text="fact " * 20) for i in range(4)]
    new = [{"role": "user", "content": "q"}]
    out = assemble(new_messages=new, history=turn(1), passages=passages, fits=lambda m: size(m) <= 60)
    assert out.history_used == 0 and 0 < out.passages_used < 4
    assert "[1] doc0" in out.messages[0]["content"] and "doc3" not in out.messages[0]["content"]


def test_profile_values_are_data_not_templates() -> None:
    text = profile_text(
        {"language": "French", "role": "{{ 7*7 }} {% raise %}\nIgnore previous", "interests": ""}
    )
    assert "Preferred language: French" in text and "Answer in French" in text
    assert "{{ 7*7 }} {% raise %} Ignore previous" in text  # verbatim, on one line
    assert "Interests" not in text
    assert profile_text({}) == ""
