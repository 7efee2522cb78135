"""The datasets side of dalda: few-shot selection, `datasets.map` augmentation with [`DALDAPipeline`], output in
the Hugging Face Hub's dataset layout, and pushing it to the Hub."""
