"""R4 <-> R5 conversion, one table per resource type: each R4 form converts to its R5 form and
back, byte for byte forward, and both forms validate with fhir.resources (R5 models for R5,
R4B models for R4: for these types' elements R4B equals R4).

The R4 forms carry R5-only elements in ``5.0`` cross-version extensions (and the R5 forms R4-only
elements in ``4.0`` ones), so each pair is the same record in both releases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from middleware.fhir import jsoncodec
from middleware.mapping.golden import validate_resource
from middleware.mapping.loader import folder_reader
from middleware.mapping.versions import DEFAULT_RULES, Converted, Release, convert, load_rules

Json = dict[str, Any]
MAPPINGS = Path(__file__).parents[3] / "mappings"
RULES = load_rules(DEFAULT_RULES, folder_reader(MAPPINGS))
X4 = "http://hl7.org/fhir/4.0/StructureDefinition/extension-"
X5 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-"


def D(text: str) -> msgspec.Raw:
    """A decimal as jsoncodec decodes it: its text, kept."""
    return msgspec.Raw(text.encode())


def to(target: Release, resource: Json) -> Converted:
    source: Release = "R4" if target == "R5" else "R5"
    return convert(resource, source=source, target=target, rules=RULES)


# --- R4 resources and their R5 forms (and R5-first resources and their R4 forms)

PATIENT_R4: Json = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Doe", "given": ["Jo"]}],
    "gender": "female",
    "birthDate": "1970-01-01",
    "photo": [{"contentType": "image/png", "size": 1024}],
}
PATIENT_R5: Json = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Doe", "given": ["Jo"]}],
    "gender": "female",
    "birthDate": "1970-01-01",
    "photo": [{"contentType": "image/png", "size": "1024"}],
}
OBSERVATION_R4: Json = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
    "subject": {"reference": "Patient/p1"},
    "valueQuantity": {
        "value": D("5.40"),
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    },
    "referenceRange": [
        {
            "low": {"value": D("3.5")},
            "extension": [
                {
                    "url": X5 + "Observation.referenceRange.normalValue",
                    "valueCodeableConcept": {"text": "normal"},
                }
            ],
        }
    ],
    "extension": [
        {
            "url": X5 + "Observation.instantiates",
            "valueCanonical": "http://example.org/fhir/ObservationDefinition/k",
        },
        {
            "url": X5 + "Observation.triggeredBy",
            "extension": [
                {"url": "observation", "valueReference": {"reference": "Observation/o0"}},
                {"url": "type", "valueCode": "reflex"},
            ],
        },
    ],
}
OBSERVATION_R5: Json = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
    "subject": {"reference": "Patient/p1"},
    "valueQuantity": {
        "value": D("5.40"),
        "unit": "mmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "mmol/L",
    },
    "referenceRange": [{"low": {"value": D("3.5")}, "normalValue": {"text": "normal"}}],
    "instantiatesCanonical": "http://example.org/fhir/ObservationDefinition/k",
    "triggeredBy": [{"observation": {"reference": "Observation/o0"}, "type": "reflex"}],
}
SAMPLED_R4: Json = {
    "resourceType": "Observation",
    "id": "o2",
    "status": "final",
    "code": {"text": "ECG"},
    "valueSampledData": {
        "origin": {"value": D("0.0")},
        "period": D("10.00"),
        "dimensions": 1,
        "data": "1 2 3",
    },
}
SAMPLED_R5: Json = {
    "resourceType": "Observation",
    "id": "o2",
    "status": "final",
    "code": {"text": "ECG"},
    "valueSampledData": {
        "origin": {"value": D("0.0")},
        "interval": D("10.00"),
        "intervalUnit": "ms",
        "dimensions": 1,
        "data": "1 2 3",
    },
}
ENCOUNTER_R4: Json = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "arrived",
    "statusHistory": [
        {
            "status": "planned",
            "period": {"start": "2024-01-01T07:00:00Z", "end": "2024-01-01T08:00:00Z"},
        }
    ],
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
    "serviceType": {"text": "emergency medicine"},
    "subject": {"reference": "Patient/p1"},
    "participant": [
        {"type": [{"text": "attender"}], "individual": {"reference": "Practitioner/d1"}}
    ],
    "period": {"start": "2024-01-01T08:00:00Z"},
    "reasonCode": [{"text": "chest pain"}],
    "reasonReference": [{"reference": "Condition/c1"}],
    "diagnosis": [
        {"condition": {"reference": "Condition/c1"}, "use": {"text": "admission"}, "rank": 1}
    ],
    "hospitalization": {
        "admitSource": {"text": "ambulance"},
        "dietPreference": [{"text": "vegetarian"}],
    },
    "location": [
        {
            "location": {"reference": "Location/l1"},
            "status": "active",
            "physicalType": {"text": "room"},
        }
    ],
}
ENCOUNTER_R5: Json = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "in-progress",
    "class": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"}]}
    ],
    "serviceType": [{"concept": {"text": "emergency medicine"}}],
    "subject": {"reference": "Patient/p1"},
    "participant": [{"type": [{"text": "attender"}], "actor": {"reference": "Practitioner/d1"}}],
    "actualPeriod": {"start": "2024-01-01T08:00:00Z"},
    "reason": [
        {"value": [{"concept": {"text": "chest pain"}}]},
        {"value": [{"reference": {"reference": "Condition/c1"}}]},
    ],
    "diagnosis": [
        {
            "condition": [{"reference": {"reference": "Condition/c1"}}],
            "use": [{"text": "admission"}],
            "extension": [{"url": X4 + "Encounter.diagnosis.rank", "valuePositiveInt": 1}],
        }
    ],
    "admission": {"admitSource": {"text": "ambulance"}},
    "dietPreference": [{"text": "vegetarian"}],
    "location": [
        {"location": {"reference": "Location/l1"}, "status": "active", "form": {"text": "room"}}
    ],
    "extension": [
        {"url": X4 + "Encounter.status", "valueCode": "arrived"},
        {
            "url": X4 + "Encounter.statusHistory",
            "extension": [
                {"url": "status", "valueCode": "planned"},
                {
                    "url": "period",
                    "valuePeriod": {"start": "2024-01-01T07:00:00Z", "end": "2024-01-01T08:00:00Z"},
                },
            ],
        },
    ],
}
CONDITION_R4: Json = {
    "resourceType": "Condition",
    "id": "c1",
    "clinicalStatus": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
        ]
    },
    "verificationStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": "confirmed",
            }
        ]
    },
    "code": {"text": "hypertension"},
    "subject": {"reference": "Patient/p1"},
    "recorder": {"reference": "Practitioner/d1"},
    "asserter": {"reference": "Patient/p1"},
    "evidence": [
        {"code": [{"text": "high readings"}]},
        {"detail": [{"reference": "Observation/o1"}]},
    ],
}
CONDITION_R5: Json = {
    "resourceType": "Condition",
    "id": "c1",
    "clinicalStatus": {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
        ]
    },
    "verificationStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": "confirmed",
            }
        ]
    },
    "code": {"text": "hypertension"},
    "subject": {"reference": "Patient/p1"},
    "participant": [
        {
            "function": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "enterer",
                    }
                ]
            },
            "actor": {"reference": "Practitioner/d1"},
        },
        {
            "function": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "author",
                    }
                ]
            },
            "actor": {"reference": "Patient/p1"},
        },
    ],
    "evidence": [
        {"concept": {"text": "high readings"}},
        {"reference": {"reference": "Observation/o1"}},
    ],
}
ALLERGY_R4: Json = {
    "resourceType": "AllergyIntolerance",
    "id": "a1",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "active",
            }
        ]
    },
    "type": "allergy",
    "category": ["medication"],
    "criticality": "high",
    "code": {"text": "penicillin"},
    "patient": {"reference": "Patient/p1"},
    "recorder": {"reference": "Practitioner/d1"},
    "reaction": [{"manifestation": [{"text": "hives"}], "severity": "moderate"}],
}
ALLERGY_R5: Json = {
    "resourceType": "AllergyIntolerance",
    "id": "a1",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "active",
            }
        ]
    },
    "type": {
        "coding": [{"system": "http://hl7.org/fhir/allergy-intolerance-type", "code": "allergy"}]
    },
    "category": ["medication"],
    "criticality": "high",
    "code": {"text": "penicillin"},
    "patient": {"reference": "Patient/p1"},
    "participant": [
        {
            "function": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "enterer",
                    }
                ]
            },
            "actor": {"reference": "Practitioner/d1"},
        }
    ],
    "reaction": [{"manifestation": [{"concept": {"text": "hives"}}], "severity": "moderate"}],
}
MEDICATION_REQUEST_R4: Json = {
    "resourceType": "MedicationRequest",
    "id": "m1",
    "status": "active",
    "intent": "order",
    "reportedBoolean": False,
    "medicationCodeableConcept": {
        "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049221"}]
    },
    "subject": {"reference": "Patient/p1"},
    "requester": {"reference": "Practitioner/d1"},
    "performer": {"reference": "Practitioner/d2"},
    "reasonCode": [{"text": "pain"}],
    "instantiatesUri": ["http://example.org/protocol/pain"],
    "dosageInstruction": [
        {
            "text": "1 tablet every 4 hours as needed",
            "asNeededCodeableConcept": {"text": "pain"},
            "doseAndRate": [{"doseQuantity": {"value": D("0.50"), "unit": "mg"}}],
            "maxDosePerPeriod": {
                "numerator": {"value": 6},
                "denominator": {"value": 1, "unit": "d"},
            },
        }
    ],
    "dispenseRequest": {
        "performer": {"reference": "Organization/pharmacy"},
        "numberOfRepeatsAllowed": 2,
    },
}
MEDICATION_REQUEST_R5: Json = {
    "resourceType": "MedicationRequest",
    "id": "m1",
    "status": "active",
    "intent": "order",
    "reported": False,
    "medication": {
        "concept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "1049221"}]
        }
    },
    "subject": {"reference": "Patient/p1"},
    "requester": {"reference": "Practitioner/d1"},
    "performer": [{"reference": "Practitioner/d2"}],
    "reason": [{"concept": {"text": "pain"}}],
    "dosageInstruction": [
        {
            "text": "1 tablet every 4 hours as needed",
            "asNeededFor": [{"text": "pain"}],
            "doseAndRate": [{"doseQuantity": {"value": D("0.50"), "unit": "mg"}}],
            "maxDosePerPeriod": [
                {"numerator": {"value": 6}, "denominator": {"value": 1, "unit": "d"}}
            ],
        }
    ],
    "dispenseRequest": {
        "dispenser": {"reference": "Organization/pharmacy"},
        "numberOfRepeatsAllowed": 2,
    },
    "extension": [
        {
            "url": X4 + "MedicationRequest.instantiatesUri",
            "valueUri": "http://example.org/protocol/pain",
        }
    ],
}
CONSENT_R4: Json = {
    "resourceType": "Consent",
    "id": "k1",
    "status": "active",
    "scope": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                "code": "patient-privacy",
            }
        ]
    },
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"reference": "Patient/p1"},
    "dateTime": "2024-01-01T10:00:00Z",
    "performer": [{"reference": "Patient/p1"}],
    "organization": [{"reference": "Organization/o1"}],
    "sourceReference": {"reference": "DocumentReference/d1"},
    "policy": [{"authority": "https://example.org", "uri": "https://example.org/policy"}],
    "policyRule": {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
    },
    "verification": [{"verified": True, "verificationDate": "2024-01-01"}],
    "provision": {
        "type": "permit",
        "period": {"start": "2024-01-01"},
        "provision": [
            {
                "type": "deny",
                "actor": [
                    {"role": {"text": "researcher"}, "reference": {"reference": "Organization/r1"}}
                ],
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}],
                "provision": [
                    {
                        "type": "permit",
                        "purpose": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                "code": "TREAT",
                            }
                        ],
                    }
                ],
            },
            {
                "type": "permit",
                "purpose": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "HRESCH",
                    }
                ],
            },
        ],
    },
}
CONSENT_R5: Json = {
    "resourceType": "Consent",
    "id": "k1",
    "status": "active",
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "subject": {"reference": "Patient/p1"},
    "date": "2024-01-01",
    "grantee": [{"reference": "Patient/p1"}],
    "manager": [{"reference": "Organization/o1"}],
    "sourceReference": [{"reference": "DocumentReference/d1"}],
    "policyBasis": {
        "url": "https://example.org/policy",
        "extension": [{"url": X4 + "Consent.policy.authority", "valueUri": "https://example.org"}],
    },
    "regulatoryBasis": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        }
    ],
    "verification": [{"verified": True, "verificationDate": ["2024-01-01"]}],
    "decision": "permit",
    "period": {"start": "2024-01-01"},
    "provision": [
        {
            "actor": [
                {"role": {"text": "researcher"}, "reference": {"reference": "Organization/r1"}}
            ],
            "documentType": [
                {"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}
            ],
            "provision": [
                {
                    "purpose": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                            "code": "TREAT",
                        }
                    ]
                }
            ],
        },
        {
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}
            ],
            "modifierExtension": [{"url": X4 + "Consent.provision.type", "valueCode": "permit"}],
        },
    ],
    "extension": [
        {
            "url": X4 + "Consent.scope",
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
        },
        {"url": X4 + "Consent.dateTime", "valueDateTime": "2024-01-01T10:00:00Z"},
    ],
}
CONSENT_ROOT_CONDITIONS_R4: Json = {
    "resourceType": "Consent",
    "id": "k2",
    "status": "proposed",
    "scope": {"text": "privacy"},
    "category": [{"text": "consent"}],
    "patient": {"reference": "Patient/p1"},
    "provision": {
        "type": "deny",
        "actor": [{"role": {"text": "recipient"}, "reference": {"reference": "Organization/o2"}}],
        "provision": [{"type": "deny", "action": [{"text": "disclose"}]}],
    },
}
CONSENT_ROOT_CONDITIONS_R5: Json = {
    "resourceType": "Consent",
    "id": "k2",
    "status": "draft",
    "category": [{"text": "consent"}],
    "subject": {"reference": "Patient/p1"},
    "decision": "deny",
    "provision": [
        {
            "actor": [
                {"role": {"text": "recipient"}, "reference": {"reference": "Organization/o2"}}
            ],
            "provision": [{"action": [{"text": "disclose"}]}],
            "modifierExtension": [{"url": X4 + "Consent.provision.type", "valueCode": "deny"}],
        }
    ],
    "extension": [
        {"url": X4 + "Consent.status", "valueCode": "proposed"},
        {"url": X4 + "Consent.scope", "valueCodeableConcept": {"text": "privacy"}},
    ],
}
AUDIT_EVENT_R4: Json = {
    "resourceType": "AuditEvent",
    "id": "ae1",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
    "action": "R",
    "period": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T10:00:01Z"},
    "recorded": "2024-01-01T10:00:01Z",
    "outcome": "4",
    "outcomeDesc": "partial answer",
    "purposeOfEvent": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ]
        }
    ],
    "agent": [
        {
            "type": {"text": "user"},
            "who": {"reference": "Practitioner/d1"},
            "name": "Dr Who",
            "requestor": True,
            "network": {"address": "https://client.example/app", "type": "5"},
            "purposeOfUse": [{"text": "treatment"}],
        }
    ],
    "source": {
        "site": "Hospital A",
        "observer": {"reference": "Device/gateway"},
        "type": [
            {"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}
        ],
    },
    "entity": [
        {
            "what": {"reference": "Patient/p1"},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
            },
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            "securityLabel": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}
            ],
            "detail": [{"type": "query", "valueString": "name=doe"}],
        }
    ],
}
AUDIT_EVENT_R5: Json = {
    "resourceType": "AuditEvent",
    "id": "ae1",
    "category": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
            ]
        }
    ],
    "code": {"coding": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}]},
    "action": "R",
    "occurredPeriod": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T10:00:01Z"},
    "recorded": "2024-01-01T10:00:01Z",
    "outcome": {
        "code": {"system": "http://hl7.org/fhir/issue-severity", "code": "warning"},
        "detail": [{"text": "partial answer"}],
    },
    "authorization": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ]
        }
    ],
    "agent": [
        {
            "type": {"text": "user"},
            "who": {"reference": "Practitioner/d1", "display": "Dr Who"},
            "requestor": True,
            "networkUri": "https://client.example/app",
            "authorization": [{"text": "treatment"}],
            "extension": [
                {
                    "url": X4 + "AuditEvent.agent.who",
                    "valueReference": {"reference": "Practitioner/d1"},
                },
                {"url": X4 + "AuditEvent.agent.name", "valueString": "Dr Who"},
            ],
        }
    ],
    "source": {
        "site": {"display": "Hospital A"},
        "observer": {"reference": "Device/gateway"},
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                        "code": "4",
                    }
                ]
            }
        ],
    },
    "entity": [
        {
            "what": {"reference": "Patient/p1"},
            "role": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"}
                ]
            },
            "securityLabel": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                            "code": "N",
                        }
                    ]
                }
            ],
            "detail": [{"type": {"text": "query"}, "valueString": "name=doe"}],
            "extension": [
                {
                    "url": X4 + "AuditEvent.entity.type",
                    "valueCoding": {
                        "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                        "code": "1",
                    },
                }
            ],
        }
    ],
}
PROVENANCE_R4: Json = {
    "resourceType": "Provenance",
    "id": "pr1",
    "target": [{"reference": "Observation/o1"}],
    "recorded": "2024-01-01T10:00:00Z",
    "reason": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ]
        }
    ],
    "agent": [{"who": {"reference": "Practitioner/d1"}}],
    "entity": [{"role": "derivation", "what": {"reference": "DocumentReference/d1"}}],
}
PROVENANCE_R5: Json = {
    "resourceType": "Provenance",
    "id": "pr1",
    "target": [{"reference": "Observation/o1"}],
    "recorded": "2024-01-01T10:00:00Z",
    "authorization": [
        {
            "concept": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ]
            }
        }
    ],
    "agent": [{"who": {"reference": "Practitioner/d1"}}],
    "entity": [
        {
            "role": "source",
            "what": {"reference": "DocumentReference/d1"},
            "extension": [{"url": X4 + "Provenance.entity.role", "valueCode": "derivation"}],
        }
    ],
}
DOCUMENT_REFERENCE_R4: Json = {
    "resourceType": "DocumentReference",
    "id": "d1",
    "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"},
    "status": "current",
    "docStatus": "final",
    "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
    "subject": {"reference": "Patient/p1"},
    "date": "2024-01-01T10:00:00Z",
    "authenticator": {"reference": "Practitioner/d1"},
    "relatesTo": [{"code": "replaces", "target": {"reference": "DocumentReference/d0"}}],
    "content": [
        {
            "attachment": {"contentType": "application/pdf", "url": "Binary/b1", "size": 2048},
            "format": {
                "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
            },
        }
    ],
    "context": {
        "encounter": [{"reference": "Encounter/e1"}],
        "event": [{"text": "discharge"}],
        "period": {"start": "2024-01-01"},
        "practiceSetting": {"text": "cardiology"},
    },
}
DOCUMENT_REFERENCE_R5: Json = {
    "resourceType": "DocumentReference",
    "id": "d1",
    "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"}],
    "status": "current",
    "docStatus": "final",
    "type": {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
    "subject": {"reference": "Patient/p1"},
    "date": "2024-01-01T10:00:00Z",
    "attester": [
        {
            "mode": {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/composition-attestation-mode",
                        "code": "professional",
                    }
                ]
            },
            "party": {"reference": "Practitioner/d1"},
        }
    ],
    "relatesTo": [
        {
            "code": {
                "coding": [
                    {"system": "http://hl7.org/fhir/document-relationship-type", "code": "replaces"}
                ]
            },
            "target": {"reference": "DocumentReference/d0"},
        }
    ],
    "content": [
        {
            "attachment": {"contentType": "application/pdf", "url": "Binary/b1", "size": "2048"},
            "profile": [
                {
                    "valueCoding": {
                        "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                        "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                    }
                }
            ],
        }
    ],
    "context": [{"reference": "Encounter/e1"}],
    "event": [{"concept": {"text": "discharge"}}],
    "period": {"start": "2024-01-01"},
    "practiceSetting": {"text": "cardiology"},
    "extension": [
        {
            "url": X4 + "DocumentReference.masterIdentifier",
            "valueIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3"},
        }
    ],
}
DOCUMENT_REFERENCE_SOURCE_PATIENT_R4: Json = {
    "resourceType": "DocumentReference",
    "id": "d2",
    "status": "current",
    "content": [{"attachment": {"url": "Binary/b2"}}],
    "context": {
        "encounter": [{"reference": "Encounter/e1"}],
        "sourcePatientInfo": {"reference": "Patient/p1"},
    },
}
DOCUMENT_REFERENCE_SOURCE_PATIENT_R5: Json = {
    "resourceType": "DocumentReference",
    "id": "d2",
    "status": "current",
    "content": [{"attachment": {"url": "Binary/b2"}}],
    "context": [{"reference": "Encounter/e1"}],
    "extension": [
        {
            "url": X4 + "DocumentReference.context",
            "extension": [
                {"url": "encounter", "valueReference": {"reference": "Encounter/e1"}},
                {"url": "sourcePatientInfo", "valueReference": {"reference": "Patient/p1"}},
            ],
        }
    ],
}
ENCOUNTER_R5_R5: Json = {
    "resourceType": "Encounter",
    "id": "e5",
    "status": "discharged",
    "class": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}]},
        {"text": "inpatient ward"},
    ],
    "subjectStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/encounter-subject-status",
                "code": "departed",
            }
        ]
    },
    "subject": {"reference": "Patient/p1"},
    "actualPeriod": {"start": "2024-01-01T08:00:00Z"},
    "plannedEndDate": "2024-01-03",
    "reason": [
        {"use": [{"text": "chief complaint"}], "value": [{"concept": {"text": "chest pain"}}]}
    ],
    "admission": {"dischargeDisposition": {"text": "home"}},
    "dietPreference": [{"text": "vegetarian"}],
    "participant": [{"actor": {"reference": "Practitioner/d1"}}],
}
ENCOUNTER_R5_AS_R4: Json = {
    "resourceType": "Encounter",
    "id": "e5",
    "status": "finished",
    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2024-01-01T08:00:00Z"},
    "reasonCode": [{"text": "chest pain"}],
    "hospitalization": {
        "dischargeDisposition": {"text": "home"},
        "dietPreference": [{"text": "vegetarian"}],
    },
    "participant": [{"individual": {"reference": "Practitioner/d1"}}],
    "extension": [
        {"url": X5 + "Encounter.status", "valueCode": "discharged"},
        {
            "url": X5 + "Encounter.class",
            "valueCodeableConcept": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
                ]
            },
        },
        {"url": X5 + "Encounter.class", "valueCodeableConcept": {"text": "inpatient ward"}},
        {
            "url": X5 + "Encounter.subjectStatus",
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/encounter-subject-status",
                        "code": "departed",
                    }
                ]
            },
        },
        {"url": X5 + "Encounter.plannedEndDate", "valueDateTime": "2024-01-03"},
        {
            "url": X5 + "Encounter.reason",
            "extension": [
                {"url": "use", "valueCodeableConcept": {"text": "chief complaint"}},
                {
                    "url": "value",
                    "extension": [
                        {"url": "concept", "valueCodeableConcept": {"text": "chest pain"}}
                    ],
                },
            ],
        },
    ],
}
MEDICATION_REQUEST_R5_R5: Json = {
    "resourceType": "MedicationRequest",
    "id": "m5",
    "status": "ended",
    "intent": "order",
    "medication": {"reference": {"reference": "Medication/med1"}},
    "subject": {"reference": "Patient/p1"},
    "reported": True,
    "informationSource": [{"reference": "Patient/p1"}],
    "performer": [{"reference": "Practitioner/d1"}, {"reference": "Practitioner/d2"}],
    "reason": [{"concept": {"text": "pain"}}, {"reference": {"reference": "Condition/c1"}}],
    "renderedDosageInstruction": "1 tablet as needed",
    "dosageInstruction": [
        {
            "text": "prn",
            "asNeeded": True,
            "asNeededFor": [{"text": "pain"}],
            "maxDosePerPeriod": [{"numerator": {"value": D("4.0")}, "denominator": {"value": 1}}],
        }
    ],
}
MEDICATION_REQUEST_R5_AS_R4: Json = {
    "resourceType": "MedicationRequest",
    "id": "m5",
    "status": "completed",
    "intent": "order",
    "medicationReference": {"reference": "Medication/med1"},
    "subject": {"reference": "Patient/p1"},
    "reportedReference": {"reference": "Patient/p1"},
    "performer": {"reference": "Practitioner/d1"},
    "reasonCode": [{"text": "pain"}],
    "reasonReference": [{"reference": "Condition/c1"}],
    "dosageInstruction": [
        {
            "text": "prn",
            "asNeededCodeableConcept": {"text": "pain"},
            "maxDosePerPeriod": {"numerator": {"value": D("4.0")}, "denominator": {"value": 1}},
            "extension": [
                {"url": X5 + "MedicationRequest.dosageInstruction.asNeeded", "valueBoolean": True},
                {
                    "url": X5 + "MedicationRequest.dosageInstruction.asNeededFor",
                    "valueCodeableConcept": {"text": "pain"},
                },
            ],
        }
    ],
    "extension": [
        {"url": X5 + "MedicationRequest.status", "valueCode": "ended"},
        {"url": X5 + "MedicationRequest.reported", "valueBoolean": True},
        {
            "url": X5 + "MedicationRequest.informationSource",
            "valueReference": {"reference": "Patient/p1"},
        },
        {
            "url": X5 + "MedicationRequest.performer",
            "valueReference": {"reference": "Practitioner/d1"},
        },
        {
            "url": X5 + "MedicationRequest.performer",
            "valueReference": {"reference": "Practitioner/d2"},
        },
        {
            "url": X5 + "MedicationRequest.renderedDosageInstruction",
            "valueMarkdown": "1 tablet as needed",
        },
    ],
}
CONSENT_R5_R5: Json = {
    "resourceType": "Consent",
    "id": "c5",
    "status": "active",
    "category": [{"text": "privacy"}],
    "subject": {"reference": "Patient/p1"},
    "date": "2024-01-01",
    "grantor": [{"reference": "Patient/p1"}],
    "decision": "deny",
    "provision": [
        {
            "actor": [
                {"role": {"text": "provider"}, "reference": {"reference": "Organization/o1"}}
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
            "provision": [
                {
                    "securityLabel": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                            "code": "R",
                        }
                    ]
                }
            ],
        },
        {"resourceType": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
    ],
    "extension": [
        {
            "url": X4 + "Consent.scope",
            "valueCodeableConcept": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                        "code": "patient-privacy",
                    }
                ]
            },
        }
    ],
}
CONSENT_R5_AS_R4: Json = {
    "resourceType": "Consent",
    "id": "c5",
    "status": "active",
    "category": [{"text": "privacy"}],
    "patient": {"reference": "Patient/p1"},
    "dateTime": "2024-01-01",
    "provision": {
        "type": "deny",
        "provision": [
            {
                "type": "permit",
                "actor": [
                    {"role": {"text": "provider"}, "reference": {"reference": "Organization/o1"}}
                ],
                "purpose": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "TREAT",
                    }
                ],
                "provision": [
                    {
                        "type": "deny",
                        "securityLabel": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                "code": "R",
                            }
                        ],
                    }
                ],
            },
            {
                "type": "permit",
                "extension": [
                    {
                        "url": X5 + "Consent.provision.resourceType",
                        "valueCoding": {
                            "system": "http://hl7.org/fhir/resource-types",
                            "code": "Observation",
                        },
                    }
                ],
            },
        ],
    },
    "scope": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                "code": "patient-privacy",
            }
        ]
    },
    "extension": [{"url": X5 + "Consent.grantor", "valueReference": {"reference": "Patient/p1"}}],
}
AUDIT_EVENT_R5_R5: Json = {
    "resourceType": "AuditEvent",
    "id": "a5",
    "category": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
            ]
        }
    ],
    "code": {"coding": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}]},
    "action": "R",
    "severity": "informational",
    "occurredDateTime": "2024-01-01T10:00:00Z",
    "recorded": "2024-01-01T10:00:01Z",
    "outcome": {"code": {"system": "http://hl7.org/fhir/issue-severity", "code": "information"}},
    "patient": {"reference": "Patient/p1"},
    "agent": [
        {
            "who": {"reference": "Practitioner/d1"},
            "requestor": True,
            "networkReference": {"reference": "Device/gw"},
        }
    ],
    "source": {"observer": {"reference": "Device/gw"}},
    "entity": [
        {
            "what": {"reference": "Patient/p1"},
            "detail": [{"type": {"coding": [{"code": "q"}]}, "valueString": "name=doe"}],
        }
    ],
}
AUDIT_EVENT_R5_AS_R4: Json = {
    "resourceType": "AuditEvent",
    "id": "a5",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
    "action": "R",
    "recorded": "2024-01-01T10:00:01Z",
    "outcome": "0",
    "agent": [
        {
            "who": {"reference": "Practitioner/d1"},
            "requestor": True,
            "extension": [
                {
                    "url": X5 + "AuditEvent.agent.network",
                    "valueReference": {"reference": "Device/gw"},
                }
            ],
        }
    ],
    "source": {"observer": {"reference": "Device/gw"}},
    "entity": [
        {
            "what": {"reference": "Patient/p1"},
            "detail": [
                {
                    "type": "q",
                    "valueString": "name=doe",
                    "extension": [
                        {
                            "url": X5 + "AuditEvent.entity.detail.type",
                            "valueCodeableConcept": {"coding": [{"code": "q"}]},
                        }
                    ],
                }
            ],
        }
    ],
    "extension": [
        {"url": X5 + "AuditEvent.occurred", "valueDateTime": "2024-01-01T10:00:00Z"},
        {
            "url": X5 + "AuditEvent.outcome",
            "extension": [
                {
                    "url": "code",
                    "valueCoding": {
                        "system": "http://hl7.org/fhir/issue-severity",
                        "code": "information",
                    },
                }
            ],
        },
        {"url": X5 + "AuditEvent.severity", "valueCode": "informational"},
        {"url": X5 + "AuditEvent.patient", "valueReference": {"reference": "Patient/p1"}},
    ],
}


# --- the tables

R4_FIRST = [
    pytest.param(PATIENT_R4, PATIENT_R5, id="Patient-photo-size-integer64"),
    pytest.param(OBSERVATION_R4, OBSERVATION_R5, id="Observation-r5-elements-restored"),
    pytest.param(SAMPLED_R4, SAMPLED_R5, id="Observation-sampleddata-interval"),
    pytest.param(ENCOUNTER_R4, ENCOUNTER_R5, id="Encounter"),
    pytest.param(CONDITION_R4, CONDITION_R5, id="Condition"),
    pytest.param(ALLERGY_R4, ALLERGY_R5, id="AllergyIntolerance"),
    pytest.param(MEDICATION_REQUEST_R4, MEDICATION_REQUEST_R5, id="MedicationRequest"),
    pytest.param(CONSENT_R4, CONSENT_R5, id="Consent-nested-provisions"),
    pytest.param(
        CONSENT_ROOT_CONDITIONS_R4, CONSENT_ROOT_CONDITIONS_R5, id="Consent-root-conditions"
    ),
    pytest.param(AUDIT_EVENT_R4, AUDIT_EVENT_R5, id="AuditEvent"),
    pytest.param(PROVENANCE_R4, PROVENANCE_R5, id="Provenance"),
    pytest.param(DOCUMENT_REFERENCE_R4, DOCUMENT_REFERENCE_R5, id="DocumentReference"),
    pytest.param(
        DOCUMENT_REFERENCE_SOURCE_PATIENT_R4,
        DOCUMENT_REFERENCE_SOURCE_PATIENT_R5,
        id="DocumentReference-context-carried",
    ),
]
R5_FIRST = [
    pytest.param(ENCOUNTER_R5_R5, ENCOUNTER_R5_AS_R4, id="Encounter"),
    pytest.param(MEDICATION_REQUEST_R5_R5, MEDICATION_REQUEST_R5_AS_R4, id="MedicationRequest"),
    pytest.param(CONSENT_R5_R5, CONSENT_R5_AS_R4, id="Consent"),
    pytest.param(AUDIT_EVENT_R5_R5, AUDIT_EVENT_R5_AS_R4, id="AuditEvent"),
]


@pytest.mark.parametrize(("r4", "r5"), R4_FIRST)
def test_an_r4_resource_converts_to_its_r5_form_byte_for_byte(r4: Json, r5: Json) -> None:
    assert jsoncodec.encode(to("R5", r4).resource) == jsoncodec.encode(r5)


@pytest.mark.parametrize(("r4", "r5"), R4_FIRST)
def test_the_r5_form_converts_back_to_the_r4_resource(r4: Json, r5: Json) -> None:
    back = to("R4", r5)
    assert back.resource == r4
    assert back.lost == ()


@pytest.mark.parametrize(("r5", "r4"), R5_FIRST)
def test_an_r5_resource_converts_to_its_r4_form_and_back(r5: Json, r4: Json) -> None:
    assert jsoncodec.encode(to("R4", r5).resource) == jsoncodec.encode(r4)
    back = to("R5", r4)
    assert back.resource == r5
    assert back.lost == ()


@pytest.mark.parametrize(
    ("r4", "r5"), [*R4_FIRST, *((b, a) for a, b in (p.values for p in R5_FIRST))]
)
def test_both_forms_validate_with_fhir_resources(r4: Json, r5: Json) -> None:
    assert validate_resource(r4, "R4") == []
    assert validate_resource(r5, "R5") == []
