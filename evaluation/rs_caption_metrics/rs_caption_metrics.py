"""``evaluate`` module: coco-caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) with PTB tokenization.

Load it offline from the installed package::

    import evaluate
    from hqrs.evaluation import caption_metrics_path

    metric = evaluate.load(caption_metrics_path())
    metric.compute(predictions=["a plane is parked near the terminal"],
                   references=[["a plane is parked at the airport", "an airplane stops near the terminal"]])

The numbers equal ``pycocoevalcap``'s (same Java PTB tokenizer and METEOR jar; BLEU / ROUGE-L / CIDEr
re-implemented and tested to 1e-6). "CIDEr" is coco-caption's CIDEr, i.e. the CIDEr-D definition.
SPICE is not available offline and raises a clear error when requested.
"""

import importlib

import datasets
import evaluate

# Imported by name: evaluate scans `import x` lines and would look for a top-level `hqrs` module, but
# hqrs is installed as sub-packages (hqrs.evaluation, ...) only.
coco_caption = importlib.import_module("hqrs.evaluation.coco_caption")

_CITATION = """\
@inproceedings{papineni2002bleu, title={BLEU: a method for automatic evaluation of machine translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing}, booktitle={ACL}, year={2002}}
@inproceedings{denkowski2014meteor, title={Meteor Universal: Language Specific Translation Evaluation for Any
  Target Language}, author={Denkowski, Michael and Lavie, Alon}, booktitle={WMT}, year={2014}}
@inproceedings{lin2004rouge, title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew}, booktitle={Text Summarization Branches Out}, year={2004}}
@inproceedings{vedantam2015cider, title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi}, booktitle={CVPR}, year={2015}}
@article{chen2015microsoft, title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and others}, journal={arXiv:1504.00325}, year={2015}}
"""

_DESCRIPTION = """\
Image-caption metrics exactly as coco-caption (pycocoevalcap) computes them, which is what remote-sensing
captioning papers (UCM-Captions, Sydney-Captions, RSICD, NWPU-Captions) report: captions are tokenized by
the Stanford PTB tokenizer (lower-cased, punctuation removed), then BLEU-1..4 (closest reference length),
METEOR 1.5, ROUGE-L (beta 1.2) and CIDEr (the CIDEr-D variant, sigma 6, x10) are computed over the corpus.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of candidate captions, one per image.
    references: list of lists of reference captions, aligned with predictions.
    metrics: optional list among "BLEU", "METEOR", "ROUGE_L", "CIDEr" (default: all). "SPICE" raises
        (it needs a download).
    ids: optional image ids aligned with predictions (used in error messages); default "0", "1", ...
Returns:
    dict with BLEU_1, BLEU_2, BLEU_3, BLEU_4, METEOR, ROUGE_L, CIDEr (floats, coco-caption scale: 0-1,
    CIDEr 0-10).
Examples:
    >>> metric = evaluate.load(caption_metrics_path())  # doctest: +SKIP
    >>> metric.compute(predictions=["a farm"], references=[["a piece of farmland ."]], metrics=["BLEU"])  # doctest: +SKIP
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RsCaptionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            codebase_urls=["https://github.com/salaniz/pycocoevalcap"],
            reference_urls=["https://arxiv.org/abs/1504.00325"],
        )

    def _compute(self, predictions, references, metrics=None, ids=None):
        if ids is None:
            ids = [str(i) for i in range(len(predictions))]
        elif len(ids) != len(predictions):
            raise ValueError(f"ids has {len(ids)} entries but there are {len(predictions)} predictions")
        if len(set(map(str, ids))) != len(ids):
            raise ValueError("ids must be unique")
        preds = dict(zip(map(str, ids), predictions))
        refs = dict(zip(map(str, ids), references))
        return dict(coco_caption.score_captions(preds, refs, metrics=metrics).corpus)
