"""Stand-in for Forge's backend/text_processing/emphasis.py: the "Original" emphasis (multiply the rows by
their weights, then restore the chunk's mean) and "None"."""


class Emphasis:
    name = "Base"

    def after_transformers(self):
        pass


class EmphasisNone(Emphasis):
    name = "None"


class EmphasisOriginal(Emphasis):
    name = "Original"

    def after_transformers(self):
        original_mean = self.z.mean()
        self.z = self.z * self.multipliers.reshape(self.multipliers.shape + (1,)).expand(self.z.shape)
        new_mean = self.z.mean()
        self.z = self.z * (original_mean / new_mean)


options = [EmphasisNone, EmphasisOriginal]


def get_current_option(emphasis_option_name):
    return next(iter([x for x in options if x.name == emphasis_option_name]), EmphasisOriginal)
