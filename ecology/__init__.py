"""trapkit.ecology: from results to ecological data (Camtrap DP packages, the season report, morphs)."""
