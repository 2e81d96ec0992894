"""MpGI generation engine and the HQRS-IT ``datasets`` builder (``hqrs.dataset_builder``)."""

PAPER_CITATION = """@article{he2025mpgi,
  title   = {Enhancing Remote Sensing Vision-Language Models Through MLLM and LLM-Based High-Quality Image-Text Dataset Generation},
  author  = {He, Yiguo and Zhu, Junjie and Li, Yiying and Zhang, Xiaoyu and Qiu, Chunping and Wang, Jun and Huang, Qiangjuan and Yang, Ke},
  journal = {arXiv preprint arXiv:2507.16716},
  year    = {2025}
}"""
