"""API sources: Spotify, Last.fm, SoundCloud, social networks (`social/`), and the
generic REST/GraphQL client they are built on (`http/`: paginators, auth,
rate limits, retries, cache, host allow-list).
"""
