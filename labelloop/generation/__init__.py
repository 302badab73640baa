"""The `generation` task family: prompt -> response with a small causal LM.

What differs from classification lives here, one module per concern, read top to bottom:
- `base`:   the base model (a GGUF file converted once to safetensors, or any HF causal-LM
            directory), `model.init` pretrained | scratch;
- `chat`:   prompts and training examples through the model's chat template (one place for
            training, evaluation and serving);
- `bundle`: the generation model bundle (HF causal-LM directory + labelloop.json) and loading it;
- `data`:   the chatterbot corpus and user files into `prompt`/`response` rows, split by prompt;
- `training`: supervised fine-tuning with TRL's SFTTrainer (PEFT LoRA or full);
- `evaluation`: loss/perplexity, greedy outputs scored with chrF and ROUGE-L, for the fine-tuned
            model and its base in the same run; `promotion`: the champion/challenger judgement.
"""
