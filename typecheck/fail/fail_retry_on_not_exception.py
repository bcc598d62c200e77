"""retry_on lists exception classes: an instance, or a class that is no Exception, is refused."""

import romeways

config = romeways.GenericQueueConfig(connector_name="mem", retry_on=(int,))  # expect: arg-type
