"""What a DICOM header says about an input: a chest radiograph, or something else.

The header is the cheapest and surest evidence: a CT slice, an MR series, an RT dose grid or a
segmentation says what it is in Modality (0008,0060) and its SOP class. A radiograph (CR, DX)
of another body part says so in BodyPartExamined (0018,0015). Secondary captures and files
without a modality say nothing, and are left to the pixel and embedding checks.
"""

from __future__ import annotations

from medxpert.data.images import DicomHeader

RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "DR", "RG"})
# Say nothing about what the image shows: other evidence decides.
UNINFORMATIVE_MODALITIES = frozenset({"OT", ""})
# Words of BodyPartExamined values that name the chest (DICOM PS3.16 Annex L uses CHEST;
# sites write THORAX, PORTABLE CHEST, CHEST_PA, LUNG, ...).
CHEST_WORDS = ("CHEST", "THORAX", "THORAC", "LUNG", "TORAX")
# SOP classes that are never a chest radiograph whatever their Modality says.
NON_IMAGE_CLASS_WORDS = ("Segmentation", "RT ", "Structured Report", "SR Storage", "Waveform")
LOCALIZER = "LOCALIZER"


def header_problems(header: DicomHeader | None) -> list[str]:
    """Why the header says the input is not a chest radiograph (empty when it does not)."""
    if header is None:
        return []
    problems = []
    modality = header.modality or ""
    what = f"Modality {modality}" + (f" ({header.sop_class_name})" if header.sop_class_name else "")
    if modality not in RADIOGRAPH_MODALITIES | UNINFORMATIVE_MODALITIES:
        problems.append(
            f"its DICOM header says {what}; MedXpert reads chest radiographs (Modality CR or DX)"
        )
    elif header.sop_class_name and any(w in header.sop_class_name for w in NON_IMAGE_CLASS_WORDS):
        problems.append(f"its DICOM SOP class is {header.sop_class_name}, not a radiograph")
    if header.body_part and not any(word in header.body_part for word in CHEST_WORDS):
        problems.append(f"its DICOM header says BodyPartExamined {header.body_part}, not the chest")
    if LOCALIZER in header.image_type:
        problems.append("its DICOM ImageType says it is a localizer (scout) image")
    return problems
