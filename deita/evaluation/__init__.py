"""Evaluation: answer benchmark prompts with the final model and measure held-out loss.

The ``eval`` stage (:func:`deita.evaluation.stage.run_eval_stage`, run with ``stages=[...,eval]``) writes,
under ``<run_dir>/eval/``, one folder per ``data.eval_prompts`` source named after the file stem:

* ``<stem>/model_answer/<model_id>.jsonl``: FastChat answers (MT-Bench-format sets such as
  ``question.jsonl``), turn 2 asked with the model's own turn-1 answer;
* ``<stem>/alpaca_eval.json``: AlpacaEval outputs (every set; for MT-Bench the first turns);
* ``heldout_loss.jsonl`` and, in ``manifest.json``, ``heldout_loss`` / ``heldout_rows``: the final model's
  token-weighted mean loss on assistant tokens of pool rows the select stage did not select, at most
  ``eval.limit`` rows (256 when ``eval.limit`` is null), drawn with seed 0. Skipped, with
  ``heldout_note`` saying why, when there is no ``select/scores.parquet`` or the chat template has no
  ``{% generation %}`` markers.

The final model is that of the last stage in pipeline order that produces one (DPO when it finished,
else SFT; see the stage registry, :mod:`deita.stages`), or of ``eval.model_stage`` when set. Greedy decoding when
``eval.temperature`` is 0; sampling otherwise (seeded per prompt group, with the model's own
generation-config ``top_p``/``top_k``, as FastChat's ``model.generate`` call also gets them).

The judges are separate tools that call GPT-4; run them yourself on these files.

MT-Bench with FastChat llm_judge (GPT-4 single-answer grading, scale 1-10)::

    git clone https://github.com/lm-sys/FastChat && pip install -e "FastChat[model_worker,llm_judge]"
    cp runs/<recipe>/<overrides>/eval/fastchat_mt_bench_question/model_answer/<model_id>.jsonl \\
       FastChat/fastchat/llm_judge/data/mt_bench/model_answer/
    cd FastChat/fastchat/llm_judge && export OPENAI_API_KEY=...
    python gen_judgment.py --model-list <model_id> --parallel 4     # judge: gpt-4, mode: single
    python show_result.py --model-list <model_id>

``gen_judgment.py`` checks that every question has an answer, so answer all 80 questions
(``eval.limit=null``) for a real score. FastChat's own answer script uses per-category temperatures
(0.7 writing/roleplay, 0.1 stem/humanities, 0 otherwise) and 1024 new tokens; ours uses
``eval.temperature`` (default 0, greedy) and ``eval.max_new_tokens`` for every question.

AlpacaEval (DEITA reported AlpacaEval 1, alpaca-eval 0.3.6, GPT-4 annotator against text-davinci-003)::

    pip install alpaca-eval && export OPENAI_API_KEY=...
    alpaca_eval --model_outputs runs/<...>/eval/<stem>/alpaca_eval.json --annotators_config alpaca_eval_gpt4

For a real AlpacaEval score the prompt set must be AlpacaEval's own 805 instructions (its
``alpaca_eval.json`` loads as format ``alpaca_eval``); the MT-Bench first-turn file is a quick
single-turn comparison only, not an AlpacaEval number.
"""
