"""The supply-contract check ("open-gkh"): a JSON facade whose vocabulary is GIS ZhKH's
exportSupplyResourceContractData (shared/reference/external_apis.md §2.4)."""
