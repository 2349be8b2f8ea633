DROP TABLE processing_records;
DROP TABLE disclosures;
DROP TABLE policy_versions;
DROP TABLE compliance_reminders;
DROP TABLE privacy_enquiries;
