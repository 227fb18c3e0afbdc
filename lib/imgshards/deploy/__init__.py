"""Job definitions for Databricks, EMR and Kubernetes generated from one contract (deploy/contract.yaml)."""
