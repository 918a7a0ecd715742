"""CelebA's 40 binary attributes, in the order of its annotation files (`list_attr_celeba.txt`,
`CelebAMask-HQ-attribute-anno.txt`) and of Anycost GAN's predictor logits. Index i is CelebA's 1-based attribute
number i + 1 (Talk-to-Edit's head names use that number): Bangs 5, Eyeglasses 15, Male 20, No_Beard 24,
Smiling 31, Young 39 (0-based)."""

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
assert len(CELEBA_ATTRIBUTES) == 40
