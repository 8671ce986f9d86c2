"""HL7 report intake: MLLP server, ORU/MDM parsing, ACKs, CDA extraction (ARCHITECTURE.md §3)."""

from appliance.hl7.cda import CdaReport, parse_cda
from appliance.hl7.errors import CdaError, ErrorCode, Hl7Error
from appliance.hl7.messages import (
                                     Action,
                                     Report,
                                     Sender,
                                     inconsistencies,
                                     parse_message,
                                     read_report,
)
from appliance.hl7.mllp import MllpClient, MllpServer, send_message

__all__ = ["Action", "CdaError", "CdaReport", "ErrorCode", "Hl7Error", "MllpClient", "MllpServer",
           "Report", "Sender", "inconsistencies", "parse_cda", "parse_message", "read_report",
           "send_message"]
