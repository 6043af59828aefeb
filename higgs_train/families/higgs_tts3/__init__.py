"""Higgs TTS 3 (Boson AI's release after Higgs Audio v2): a Qwen3 LLM over the same audio codes.

    config.py       Tts3Config: the sizes (configs/model/llm/tts3_tiny.yaml, tts3_full.yaml)
    model.py        HiggsTTS3Model: DualFFNModel's call surface on Qwen3 blocks and a fused audio table
    layouts.py      our layout and the release's: tensor names, config.json both ways, detection
    checkpoints.py  load (dtype / device / quantize) and save, in either layout
    prompt.py       zero-shot and cloning prompts, training samples and which positions carry a loss
"""
