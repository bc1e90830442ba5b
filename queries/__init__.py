"""The query list: English Wikipedia unigrams, bigrams, titles and WordNet synsets."""
